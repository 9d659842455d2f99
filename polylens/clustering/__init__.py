"""Clustering spline codes under Hamming distance (and activations beside them): the Hamming
kernels, neighbour graphs, the estimators (HDBSCAN, k-medoids, agglomerative), the points each
model's protocol takes, the analysis that scores clusters against labels, and the HTML report."""
