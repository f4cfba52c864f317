"""The styled lines `nvmmpy run` prints, without rich: importing rich is ~16 ms, a fifth of a
guest's start-up. PlainConsole.print takes the subset of rich markup run uses ([bold], [dim], [red],
[green], [yellow], combinations, [/] and \\[ for a literal bracket) and writes ANSI styles on a
terminal (not with NO_COLOR), plain text otherwise: the same words rich would print."""
import os
import re
import sys

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33"}
_TOKEN = re.compile(r"\\\[|\[(/|[a-z][a-z ]*)\]")


def escape(text: str) -> str:
    """Text that prints as itself (rich's own markup.escape reads it the same way)."""
    return text.replace("[", "\\[")


def render(markup: str, styled: bool) -> str:
    out, stack, at = [], [], 0
    for m in _TOKEN.finditer(markup):
        out.append(markup[at:m.start()])
        at = m.end()
        tag = m.group(1)
        if tag is None:                       # \[
            out.append("[")
        elif tag == "/":
            if stack:
                stack.pop()
            if styled:
                out.append("\x1b[0m" + "".join(stack))
        elif all(w in _CODES for w in tag.split()):
            code = "\x1b[" + ";".join(_CODES[w] for w in tag.split()) + "m"
            stack.append(code)
            if styled:
                out.append(code)
        else:                                 # not a style: the text itself, as rich prints unknown words
            out.append(m.group(0))
    out.append(markup[at:])
    if styled and stack:
        out.append("\x1b[0m")
    return "".join(out)


class PlainConsole:
    def __init__(self, stream=None):
        self._stream = stream

    @property
    def stream(self):
        return self._stream or sys.stderr

    def print(self, markup: str = "", **_ignored) -> None:
        s = self.stream
        styled = s.isatty() and "NO_COLOR" not in os.environ
        s.write(render(markup, styled) + "\n")
        s.flush()


err_console = PlainConsole()
