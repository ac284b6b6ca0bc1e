def kernel():
    return 1.0


def pair():
    return 1.0, 2.0
