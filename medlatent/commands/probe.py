"""Cross-validated linear probes: how well do a run's latent features predict a label or attribute?

Both families write per-subject feature tables (``medlatent encode``); a probe fits a
standardised logistic regression (categorical target) or ridge regression (numeric target)
with scikit-learn, in stratified (classification) or plain (regression) k-fold
cross-validation, and reports the mean and spread over folds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medlatent.errors import InputError
from medlatent.runs import write_json

__all__ = ["probe", "load_table", "is_categorical"]


def load_table(path: str | Path, what: str = "table") -> pd.DataFrame:
    """A CSV with a ``subject`` column (read as text); InputError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path, dtype={"subject": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a readable CSV: {err}") from None
    if "subject" not in frame.columns:
        raise InputError(f"{path}: no 'subject' column (columns: {list(frame.columns)[:20]})")
    return frame


def is_categorical(values: pd.Series, max_classes: int = 10) -> bool:
    """Text, booleans, or integers with at most ``max_classes`` distinct values count as classes."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    numeric = values.astype(float)
    return bool(np.all(numeric == np.round(numeric)) and numeric.nunique() <= max_classes)


def probe(features_csv: str | Path, target: str, table: str | Path | None = None, folds: int = 5, seed: int = 0,
          output: str | Path | None = None) -> dict[str, Any]:
    """Predict ``target`` from the numeric feature columns of ``features_csv``.

    Args:
        features_csv: ``subject`` + feature columns (from ``medlatent encode``); may also hold
            the target column.
        target: the column to predict; taken from ``table`` when given (joined on ``subject``).
        table: optional CSV with ``subject`` and ``target`` (a manifest or clinical table).
        folds: cross-validation folds (fewer if a class has fewer members; at least 2).
        seed: shuffling seed of the folds.
        output: optional JSON path for the figures.

    Returns:
        Classification: ``{"task": "classification", "auc", "auc_std", "accuracy", "accuracy_std",
        "n", "classes", "folds"}``; regression: ``{"task": "regression", "r2", "r2_std", "mae",
        "mae_std", "n", "folds"}``.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import KFold, StratifiedKFold, cross_validate
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = load_table(features_csv, "features file")
    feature_columns = [c for c in features.columns if c != "subject" and c != target
                       and pd.api.types.is_numeric_dtype(features[c])]
    if table is not None:
        extra = load_table(table)
        if target not in extra.columns:
            raise InputError(f"--target: column '{target}' not in {table} (columns: {list(extra.columns)[:30]})")
        frame = features.drop(columns=[target], errors="ignore").merge(extra[["subject", target]], on="subject")
        if frame.empty:
            raise InputError(f"{table}: no subject in common with {features_csv}")
    else:
        if target not in features.columns:
            raise InputError(f"--target: column '{target}' not in {features_csv}; pass --table CSV holding it "
                             f"(e.g. the manifest)")
        frame = features
    if not feature_columns:
        raise InputError(f"{features_csv}: no numeric feature columns")
    frame = frame[frame[target].notna()]
    x = frame[feature_columns].to_numpy(dtype=np.float64)
    y = frame[target]
    categorical = is_categorical(y)
    result: dict[str, Any] = {"target": target, "n": int(len(frame)), "n_features": len(feature_columns)}
    if categorical:
        labels, classes = pd.factorize(y.astype(str), sort=True)
        smallest = int(np.bincount(labels).min()) if len(classes) > 1 else 0
        if len(classes) < 2 or smallest < 2:
            raise InputError(f"--target {target}: need at least two classes with two subjects each, got "
                             f"{dict(y.astype(str).value_counts())}")
        k = min(folds, smallest)
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scoring = {"auc": "roc_auc" if len(classes) == 2 else "roc_auc_ovr", "accuracy": "accuracy"}
        scores = cross_validate(model, x, labels, cv=splitter, scoring=scoring)
        result.update(task="classification", classes=[str(c) for c in classes], folds=k)
        for name in scoring:
            result[name] = float(np.mean(scores[f"test_{name}"]))
            result[f"{name}_std"] = float(np.std(scores[f"test_{name}"]))
        line = f"{target}: AUC {result['auc']:.3f} ± {result['auc_std']:.3f}, accuracy {result['accuracy']:.3f} ± " \
               f"{result['accuracy_std']:.3f}"
    else:
        if len(frame) < 4:
            raise InputError(f"--target {target}: need at least 4 subjects with a value, got {len(frame)}")
        k = min(folds, len(frame) // 2)
        splitter = KFold(n_splits=k, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
        scores = cross_validate(model, x, y.to_numpy(dtype=np.float64), cv=splitter,
                                scoring={"r2": "r2", "mae": "neg_mean_absolute_error"})
        result.update(task="regression", folds=k, r2=float(np.mean(scores["test_r2"])),
                      r2_std=float(np.std(scores["test_r2"])), mae=float(-np.mean(scores["test_mae"])),
                      mae_std=float(np.std(scores["test_mae"])))
        line = f"{target}: R^2 {result['r2']:.3f} ± {result['r2_std']:.3f}, MAE {result['mae']:.4g} ± " \
               f"{result['mae_std']:.3g}"
    print(f"{line} ({k}-fold CV, n={result['n']}, {len(feature_columns)} features)")
    if output is not None:
        write_json(output, result)
    return result
