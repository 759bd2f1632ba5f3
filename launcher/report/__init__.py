"""What people read: progress lines and JSON events (``progress.py``), plots and
``report.html`` (``plots.py``), the table of past runs and side-by-side comparison
(``history.py``), and the parity verdict (``parity.py``)."""
