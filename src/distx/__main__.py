from distx.cli import program

program()
