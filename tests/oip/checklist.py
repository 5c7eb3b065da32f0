"""The check runner shared by the tritonclient scripts: each check prints "ok NAME" or
"FAIL NAME: why" (with its traceback) and every check runs; `summary()` prints the tally
and returns the number of failures, the scripts' exit status; `expect_refused` is the
refusal check of all of them."""

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


def expect_refused(fn, status, text=None):
    """Runs fn, which must fail with `status` (a grpc.StatusCode, or the HTTP code
    tritonclient.http reports) and, when given, with `text` in its message; returns the error."""
    import grpc
    from tritonclient.utils import InferenceServerException

    try:
        fn()
    except InferenceServerException as e:
        err, got, message = e, str(e.status()), e.message() or ""
    except grpc.RpcError as e:
        err, got, message = e, str(e.code()), e.details() or ""
    else:
        raise AssertionError(f"no error; wanted {status}")
    assert got == str(status), f"status {got} ({message}), wanted {status}"
    if text:
        assert text in message, f"message {message!r} lacks {text!r}"
    return err
