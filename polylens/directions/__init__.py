"""Direction finders (activation PCA, gradient PCA, the Local Interaction Basis), the one scorer
against known directions, ablation of directions in a model's layer, and the toys whose true
directions are known (x², superposition)."""
