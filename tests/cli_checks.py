"""A shared check for command-line verbs on bad input: exit status, one clear line, no traceback, nothing written."""
from clipforge.cli.main import main


def one_line_failures(cases, capsys, status: int | None = None) -> list[str]:
    """Run each ``(argv, words the error line must contain, paths that must not exist afterwards)``; return what went
    wrong (an empty list when every case exits non-zero (or with ``status``) with one line naming the problem)."""
    failures = []
    for argv, needle, absent in cases:
        code = main(list(argv))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("clipforge ")]
        problems = []
        if code == 0 or (status is not None and code != status):
            problems.append(f"exit {code}")
        if len(lines) != 1 or needle not in lines[0]:
            problems.append(f"stderr: {err!r}")
        if "Traceback" in err:
            problems.append("traceback")
        problems += [f"{p} was written" for p in absent if p.exists()]
        if problems:
            failures.append(f"{' '.join(argv[:2])} ...: {'; '.join(problems)}")
    return failures
