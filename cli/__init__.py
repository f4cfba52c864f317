"""The `nvmmpy` command line, above vmm and bench (it imports them; nothing below imports it)."""
