"""python -m nvmmpy.cli"""
from .main import main

main()
