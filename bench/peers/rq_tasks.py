"""RQ's side of the benchmark: plain functions, enqueued by reference on the ``default`` queue."""


def noop():
    return None


def touch(path):
    with open(path, "w") as fh:
        fh.write("done")
