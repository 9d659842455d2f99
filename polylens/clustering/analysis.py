"""Cluster the points of a layer on codes and on activations, score both, describe each cluster.

``cluster_layer(points, method=..., on=...)`` runs one clusterer class (``METHODS``, from
``polylens.clustering.hdbscan``, ``medoids`` and ``agglomerative``) on the hard codes (Hamming) and
on the raw pre-activations (Euclidean and cosine) of the same points, and returns a
``ClusterResult`` (plain fields, ``to_json``).

Scores against labels (digit class; token, next token, position): purity over the points not
called noise (each cluster counts its most common label), NMI and ARI over all points with noise
as one more group (scikit-learn's ``normalized_mutual_info_score``, ``adjusted_rand_score``).
``agreement_ari``: ARI between the code and the (Euclidean) activation labelings.

What a code cluster is made of (``describe``): size; medoid (the member with the least total
Hamming distance to the others, sought among at most 500 members when larger) and its code as
active-unit indices; mean active fraction; the units most over- and under-represented against the
whole set (share of the cluster on minus share of all points on); the nearest other cluster
(Hamming between medoids); top examples (the members closest to the medoid).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from polylens.clustering.agglomerative import Agglomerative
from polylens.clustering.hamming import pairwise
from polylens.clustering.hdbscan import HDBSCAN
from polylens.clustering.medoids import KMedoids
from polylens.clustering.neighbors import Points
from polylens.validation import check_choice

METHODS = {"hdbscan": HDBSCAN, "kmedoids": KMedoids, "agglomerative": Agglomerative}
ON = ("codes", "activations", "both")
SPACES = {"codes": "hamming", "activations": "euclidean", "activations_cosine": "cosine"}


@dataclass
class Scores:
    n_clusters: int
    noise_frac: float
    sizes: list[int]
    route: str
    exact: bool
    seconds: float
    purity: float | None = None  # against the first label (digit class; token id for text)
    nmi: float | None = None
    ari: float | None = None
    by_label: dict[str, dict] | None = None  # every label: {"purity", "nmi", "ari"}
    knn_recall: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ClusterResult:
    model: str
    layer: str
    n_points: int
    n_unique_codes: int
    method: str
    params: dict
    on: dict[str, dict | None]
    agreement_ari: float | None
    agreement_ari_cosine: float | None
    clusters: list[dict]
    notes: list[str]
    seconds: float

    def to_json(self) -> dict:
        return asdict(self)


def purity(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Share of non-noise points whose label is their cluster's most common one (None: all noise)."""
    keep = pred >= 0
    if not keep.any():
        return None
    p, t = pred[keep], truth[keep]
    _, t_idx = np.unique(t, return_inverse=True)
    table = np.zeros((p.max() + 1, t_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (p, t_idx), 1)
    return float(table.max(axis=1).sum() / keep.sum())


def score(pred: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, dict]:
    """name → ``{"purity", "nmi", "ari"}`` of a labeling against each label."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {
        name: {
            "purity": purity(pred, truth),
            "nmi": float(normalized_mutual_info_score(truth, pred)),
            "ari": float(adjusted_rand_score(truth, pred)),
        }
        for name, truth in labels.items()
    }


def accepted_params() -> list[str]:
    """The keys ``cluster_layer``'s ``params`` may hold: any clusterer's parameter but ``metric``
    (set by the space clustered)."""
    return sorted({name for cls in METHODS.values() for name in cls._get_param_names()} - {"metric"})


def check_params(params: dict) -> dict:
    """``params`` if every key is a parameter of some clusterer; else ValueError naming the key."""
    accepted = accepted_params()
    for key in params:
        if key not in accepted:
            raise ValueError(f"params has an unknown key {key!r}; accepted keys: {', '.join(accepted)}")
    return params


def make_clusterer(method: str, params: dict, metric: str):
    """The ``method`` clusterer for ``metric`` with the keys of ``params`` that are its parameters
    (``params`` may hold every method's parameters at once; the others are left to them)."""
    check_choice("method", method, METHODS)
    cls = METHODS[method]
    own = set(cls._get_param_names()) - {"metric"}
    return cls(
        **{k: v for k, v in check_params(params).items() if k in own}, metric=None if metric == "hamming" else metric
    )


def cluster_layer(
    points,
    *,
    method: str = "hdbscan",
    on: str = "both",
    params: dict | None = None,
    cosine: bool = True,
    top_examples: int = 8,
) -> tuple[ClusterResult, dict[str, np.ndarray]]:
    """Cluster ``points`` (a ``polylens.clustering.points.LayerPoints``); returns the result and the
    labels of each space (``codes``, ``activations``, ``activations_cosine``).

    params: the clusterer's parameters by name (``min_cluster_size``, ``n_clusters``,
    ``random_state``, ...); it may hold those of every method, each method takes its own; a key
    that is no clusterer's parameter is a ValueError."""
    check_choice("method", method, METHODS)
    check_choice("on", on, ON)
    if on != "codes" and points.activations is None:
        raise ValueError("these points have codes only (no activations); cluster them with on='codes'")
    params = check_params(dict(params or {}))
    start = time.perf_counter()
    spaces = (["codes"] if on in ("codes", "both") else []) + (
        ["activations"] + (["activations_cosine"] if cosine else []) if on in ("activations", "both") else []
    )
    results: dict[str, dict | None] = {"codes": None, "activations": None}
    labelings: dict[str, np.ndarray] = {}
    notes: list[str] = list(points.notes)
    for space in spaces:
        metric = SPACES[space]
        data = points.codes.words if metric == "hamming" else points.activations
        t0 = time.perf_counter()
        model = make_clusterer(method, params, metric).fit(Points(data, metric))
        pred = model.labels_
        labelings[space] = pred
        sc = Scores(
            n_clusters=int(pred.max() + 1) if len(pred) else 0,
            noise_frac=float((pred < 0).mean()),
            sizes=sorted(np.bincount(pred[pred >= 0]).tolist(), reverse=True) if (pred >= 0).any() else [],
            route=getattr(model, "route_", "dense"),
            exact=bool(getattr(model, "exact_", False)),
            seconds=round(time.perf_counter() - t0, 3),
            knn_recall=getattr(model, "knn_recall_", None),
            notes=list(getattr(model, "notes_", [])),
        )
        if points.labels:
            sc.by_label = score(pred, points.labels)
            first = sc.by_label[next(iter(points.labels))]
            sc.purity, sc.nmi, sc.ari = first["purity"], first["nmi"], first["ari"]
        results[space] = asdict(sc)
        notes.extend(f"{space}: {n}" for n in sc.notes)
    agree = agree_cos = None
    if "codes" in labelings and len(labelings) > 1:  # scikit-learn's metrics cost a second to import
        from sklearn.metrics import adjusted_rand_score

        if "activations" in labelings:
            agree = float(adjusted_rand_score(labelings["codes"], labelings["activations"]))
        if "activations_cosine" in labelings:
            agree_cos = float(adjusted_rand_score(labelings["codes"], labelings["activations_cosine"]))
    primary = labelings.get("codes", labelings.get("activations"))
    clusters = describe(points, primary, top_examples=top_examples)
    n_unique = points.codes.n_distinct()
    result = ClusterResult(
        model=points.model,
        layer=points.layer,
        n_points=len(points.codes),
        n_unique_codes=int(n_unique),
        method=method,
        params=params,
        on=results,
        agreement_ari=agree,
        agreement_ari_cosine=agree_cos,
        clusters=clusters,
        notes=notes,
        seconds=round(time.perf_counter() - start, 3),
    )
    return result, labelings


def _medoid(words: np.ndarray, members: np.ndarray, rng: np.random.Generator, max_candidates: int = 500) -> int:
    cand = members if len(members) <= max_candidates else rng.choice(members, max_candidates, replace=False)
    ref = members if len(members) <= 5000 else rng.choice(members, 5000, replace=False)
    cost = pairwise(words[cand], words[ref]).astype(np.int64).sum(axis=1)
    return int(cand[int(np.argmin(cost))])


def _unit_share(codes, rows: np.ndarray, chunk: int = 20000) -> np.ndarray:
    total = np.zeros(codes.n_units)
    for s in range(0, len(rows), chunk):
        total += codes.rows(rows[s : s + chunk]).unpack().sum(axis=0)
    return total / max(1, len(rows))


def describe(points, labels: np.ndarray, *, top_units: int = 10, top_examples: int = 8, seed: int = 0) -> list[dict]:
    """One dict a cluster (by label 0…k−1): see the module docstring."""
    codes, words = points.codes, points.codes.words
    rng = np.random.default_rng(seed)
    k = int(labels.max() + 1) if len(labels) and labels.max() >= 0 else 0
    if k == 0:
        return []
    everyone = rng.choice(len(words), min(len(words), 50000), replace=False)
    overall = _unit_share(codes, np.sort(everyone))
    unit_names = _unit_names(codes)
    out, medoids = [], []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        med = _medoid(words, members, rng)
        medoids.append(med)
        sample = members if len(members) <= 20000 else np.sort(rng.choice(members, 20000, replace=False))
        share = _unit_share(codes, sample)
        diff = share - overall
        over, under = np.argsort(-diff)[:top_units], np.argsort(diff)[:top_units]
        d_med = pairwise(words[[med]], words[members])[0]
        top = members[np.argsort(d_med, kind="stable")[:top_examples]]
        med_bits = codes.rows([med]).unpack()[0]
        out.append(
            {
                "label": c,
                "size": int(len(members)),
                "medoid": int(med),
                "medoid_code_on": np.flatnonzero(med_bits).tolist(),
                "mean_active_fraction": float(share.mean()),
                "mean_hamming_to_medoid": float(d_med.mean()),
                "over_represented": [
                    {"unit": unit_names[u], "cluster": float(share[u]), "all": float(overall[u])}
                    for u in over
                    if diff[u] > 0
                ],
                "under_represented": [
                    {"unit": unit_names[u], "cluster": float(share[u]), "all": float(overall[u])}
                    for u in under
                    if diff[u] < 0
                ],
                "top_examples": top.tolist(),
            }
        )
    if k > 1:
        dm = pairwise(words[medoids]).astype(np.float64)
        np.fill_diagonal(dm, np.inf)
        for c, row in enumerate(dm):
            j = int(np.argmin(row))
            out[c]["nearest_cluster"] = {"label": j, "hamming": int(row[j])}
    for c in out:
        c.setdefault("nearest_cluster", None)
        if points.labels:
            members = labels == c["label"]
            c["labels"] = {}
            for name, truth in points.labels.items():
                vals, cnt = np.unique(truth[members], return_counts=True)
                order = np.argsort(-cnt)[:5]
                names = points.label_names.get(name, {})
                c["labels"][name] = [
                    {"value": names.get(int(vals[i]), str(int(vals[i]))), "count": int(cnt[i])} for i in order
                ]
    return out


def _unit_names(codes) -> list[str]:
    """One name a code bit: ``layer[i]`` (``i`` alone for one layer); where a unit has a bit for
    each of several breakpoints (ReLU6), ``layer[i]>0`` and ``layer[i]>6``."""
    names = []
    for slot in codes.layers:
        units = [f"{slot.name}[{i}]" if len(codes.layers) > 1 else str(i) for i in range(slot.units)]
        if len(slot.breakpoints) == 1:
            names.extend(units)
        else:  # one block of bits a breakpoint (polylens.lens.codes)
            names.extend(f"{u}>{bp:g}" for bp in slot.breakpoints for u in units)
    return names
