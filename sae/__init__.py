"""sae: a sparse-autoencoder trainer with ground-truth synthetic data and recovery metrics.

(Filled by the SAE trainer issue; independent of ``polylens``: the two never import each other.)
"""
