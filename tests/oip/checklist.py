"""The check runner shared by the tritonclient scripts: each check prints "ok NAME" or
"FAIL NAME: why" (with its traceback) and every check runs; `summary()` prints the tally
and returns the number of failures, the scripts' exit status."""

import traceback

failures = []


def check(name):
    def run(fn):
        try:
            fn()
            print(f"ok {name}", flush=True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
            failures.append(name)
            print(f"FAIL {name}: {e!r}", flush=True)
            traceback.print_exc()
        return fn

    return run


def summary():
    print(f"{len(failures)} failed: {failures}" if failures else "all checks passed", flush=True)
    return len(failures)
