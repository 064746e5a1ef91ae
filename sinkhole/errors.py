"""User-facing errors.

Anything a user can cause (bad model name, empty prompt, corrupt file, wrong dtype) raises
`SinkholeError` with a message that fits on one line and says what to do. The CLI prints it to
stderr and exits with code 2; everything else is a bug and keeps its traceback.
"""


class SinkholeError(Exception):
    """An error caused by the user's input; `str(err)` is a complete one-line explanation."""


def did_you_mean(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or '' when nothing is close."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""
