"""Command-line parsing that fails in one readable line: no option abbreviations, and an unknown option names the
closest known one instead of printing the whole usage."""

from __future__ import annotations

import difflib
import re
import sys
from typing import Any, NoReturn

from jsonargparse import ArgumentParser

# jsonargparse's messages name unknown options as '--a.b' or "key 'a.b'".
_OPTION = re.compile(r"(--[\w.\-]+)|'([\w.\-]+)'")


class ConciseErrors:
    """Mixed into a jsonargparse parser: ``allow_abbrev`` off (``--trainer.max_epoch`` was silently taken as
    ``--trainer.max_epochs``), and errors as ``error: <message>`` plus a "did you mean" line, exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        lines = [f"error: {message.strip().splitlines()[0]}"]
        suggestion = self._closest_option(message)
        if suggestion:
            lines.append(f"       did you mean {suggestion}?")
        lines.append(f"       see `{self.prog.replace(' [options]', '')} --help`")
        sys.stderr.write("\n".join(lines) + "\n")
        sys.exit(2)

    def _closest_option(self, message: str) -> str | None:
        known = [option for action in self._all_actions() for option in action.option_strings if option.startswith("--")]
        for match in _OPTION.finditer(message):
            given = match.group(1) or f"--{match.group(2)}"
            if given in known:
                continue
            close = difflib.get_close_matches(given, known, n=1, cutoff=0.75)
            if close:
                return close[0]
        return None

    def _all_actions(self) -> list:
        """This parser's actions and those of its subcommand parsers."""
        actions = list(self._actions)
        for action in self._actions:
            for sub in getattr(action, "choices", None) or {}:
                parser = action.choices[sub] if isinstance(action.choices, dict) else None
                if isinstance(parser, ArgumentParser):
                    actions.extend(parser._actions)
        return actions


class PlainParser(ConciseErrors, ArgumentParser):
    """The parser of the data, experiment and scoring commands."""
