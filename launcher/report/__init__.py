"""What people read: progress lines and JSON events (``progress.py``), warnings
(``advice.py``), plots and ``report.html`` (``plots.py``, with its summary table in
``summary.py``, the ROC and precision-recall curves in ``ranking.py`` and the weights per
feature in ``weights.py``), the table of past runs and side-by-side comparison
(``history.py``), and the parity verdict (``parity.py``)."""
