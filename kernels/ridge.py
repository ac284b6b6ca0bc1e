"""k-fold cross-validated ridge regression, one (alpha, fold) pair per experiment.

`Xy` holds standard-normal features and one noise column; the target is
y = X @ w_true + 0.1 * noise with w_true[j] = 1 / (j + 1). Row i belongs to fold i % folds.
The normal equations are solved by Cholesky decomposition in plain loops, so the kernel
needs no BLAS/LAPACK binding.
"""

import numba
import numpy as np


@numba.njit(cache=True)
def targets(Xy):
    rows, columns = Xy.shape
    features = columns - 1
    y = np.empty(rows)
    for i in range(rows):
        total = 0.1 * Xy[i, features]
        for j in range(features):
            total += Xy[i, j] / (j + 1)
        y[i] = total
    return y


@numba.njit(cache=True)
def cholesky_solve(A, b):
    n = b.shape[0]
    L = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1):
            total = A[i, j]
            for k in range(j):
                total -= L[i, k] * L[j, k]
            L[i, j] = np.sqrt(total) if i == j else total / L[j, j]
    z = np.empty(n)
    for i in range(n):
        total = b[i]
        for k in range(i):
            total -= L[i, k] * z[k]
        z[i] = total / L[i, i]
    w = np.empty(n)
    for i in range(n - 1, -1, -1):
        total = z[i]
        for k in range(i + 1, n):
            total -= L[k, i] * w[k]
        w[i] = total / L[i, i]
    return w


@numba.njit(cache=True)
def cv_fold(Xy, alpha, fold, folds):
    rows, columns = Xy.shape
    features = columns - 1
    y = targets(Xy)
    A = np.zeros((features, features))
    b = np.zeros(features)
    for i in range(rows):
        if i % folds == fold:
            continue
        for j in range(features):
            b[j] += Xy[i, j] * y[i]
            for k in range(features):
                A[j, k] += Xy[i, j] * Xy[i, k]
    for j in range(features):
        A[j, j] += alpha
    w = cholesky_solve(A, b)
    error = 0.0
    count = 0
    for i in range(fold, rows, folds):
        prediction = 0.0
        for j in range(features):
            prediction += Xy[i, j] * w[j]
        error += (prediction - y[i]) ** 2
        count += 1
    return error / count
