"""python -m cnnops.demo --help"""
from cnnops.demo.digits import main

raise SystemExit(main())
