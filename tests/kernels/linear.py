"""A kernel that is not additive over row blocks (issue 11's example)."""


def weighted(X, lr, seed):
    return X.sum() * lr + 2 * seed
