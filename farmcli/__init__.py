"""The `farm` command line: the one package that sits on top of the library (`farm`), the
worker runtime (`workers`) and the dashboard, so that none of them has to import the others.

`farmcli.main` holds the `main` group and adds the sub-command modules' commands to it; those
modules import only `farmcli.errors`, never `farmcli.main`, so the package has no import circle.
"""
