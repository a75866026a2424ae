"""python -m cnnops.demo --help"""
from cnnops.demo.train import main

raise SystemExit(main())
