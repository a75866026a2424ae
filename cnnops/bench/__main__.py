"""python -m cnnops.bench --help"""
from cnnops.bench.core import main

raise SystemExit(main())
