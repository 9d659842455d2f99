"""The x² example: activation PCA misses the one direction the model reads; gradient PCA finds it.

Run: .venv/bin/python examples/x2_gradient_vs_activation_pca.py
"""

from polylens import ActivationPCA, GradientPCA, capture, score_directions
from polylens.directions.toys import X2Config, train_x2

toy = train_x2(X2Config(n_hidden=64, bias=True, seed=0))  # h = ReLU(E x + b), y = w_out·h ≈ x²
w_out = toy.truth  # [1, 64]: the only direction downstream computation reads

# One capture pass gives the hidden activations and dy/dh for every input.
got = capture(toy.model, toy.inputs, "hidden", target=lambda y: y)  # y: [n, 1]
acts, grads = got.activations["hidden"], got.gradients["hidden"]  # [n, 64], [n, 1, 64]

act_pca = ActivationPCA(n_components=1).fit(acts)
grad_pca = GradientPCA(n_components=1).fit(grads)  # uncentred: E[g gᵀ]
print(f"activation PCA  |cos(PC1, w_out)| = {score_directions(w_out, act_pca.components_).mmcs:.4f}")
print(f"gradient PCA    |cos(PC1, w_out)| = {score_directions(w_out, grad_pca.components_).mmcs:.4f}")
print(
    f"top-2 activation PCs explain {act_pca.__class__(2).fit(acts).explained_variance_ratio_.sum():.1%} of the variance"
)
