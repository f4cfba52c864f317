"""python -m nvmmpy"""
from nvmmpy.cli.entry import program

program()
