"""The consoles the CLI prints on, and its one way to fail: a line, no traceback."""
import sys

from rich.console import Console, ConsoleDimensions

UNCUT = 10000  # columns when the output is not a terminal: wide enough that no line is cut


class FullWidthConsole(Console):
    """A rich Console that, writing to a pipe or a file, prints whole lines: tables as wide as their
    contents and text unwrapped, not cut to the 80 columns rich assumes (or the width of a terminal
    that stdin happens to be). On a terminal it fits the terminal as usual."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(UNCUT, size.height)

    @size.setter
    def size(self, new_size) -> None:
        Console.size.fset(self, new_size)


console = FullWidthConsole()
err_console = FullWidthConsole(stderr=True)


def fail(message: str, code: int = 1):
    """One line on stderr saying what is wrong and what to do; no traceback."""
    from rich.markup import escape
    err_console.print(f"[bold red]nvmmpy:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)
