"""python -m nvmmpy.cli"""
from .entry import program

program()
