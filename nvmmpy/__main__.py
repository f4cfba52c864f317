"""python -m nvmmpy"""
from nvmmpy.cli.main import main

main()
