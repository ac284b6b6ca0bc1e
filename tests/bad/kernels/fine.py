def kernel(samples):
    return samples.sum()
