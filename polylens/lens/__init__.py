"""The polytope lens: spline codes (hard and soft), paths between inputs, polytope-boundary density
along them (exact where the network is certified piecewise-linear), the affine map's change at
each crossing, and the radial shell profile."""
