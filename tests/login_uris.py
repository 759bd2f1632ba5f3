"""URIs with a login and how every message, file and table shows them (the login gone, nothing
that only looks like one): ``tables.display`` and the tracking and storage redactors are held to
the same list (tests/test_tracking.py, tests/test_mutant_kills_tables_arrays.py)."""

LOGIN_URIS = [
    ("s3://KEY:SECRET@bucket/x.csv", "s3://bucket/x.csv"),
    ("s3://KEY:SE/CRET@bucket/x.csv", "s3://bucket/x.csv"),            # AWS secrets hold '/'
    ("s3://KEY:SE/CR/ET@bucket/x.csv?endpoint_override=h:9000", "s3://bucket/x.csv"),
    ("s3://KEY:SE@CRET@bucket/x.csv", "s3://bucket/x.csv"),
    ("s3://KEY:SE/CR@ET@bucket/x.csv", "s3://bucket/x.csv"),
    ("s3://KEY:SE?CRET@bucket/x.csv", "s3://bucket/x.csv"),
    ("http://alice:p/w@127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("s3://KEY:SECRET@bucket/dir@v2/x.csv", "s3://bucket/dir@v2/x.csv"),
    ("s3://bucket/dir@v2/x.csv", "s3://bucket/dir@v2/x.csv"),         # an '@' in a key is no login
    ("s3://bucket/x.csv?who=a@b", "s3://bucket/x.csv"),
    ("hdfs://nn:8020/data/user@corp/x.csv", "hdfs://nn:8020/data/user@corp/x.csv"),  # a host:port is no login
    ("http://u:p@host:5000/x@y", "http://host:5000/x@y"),
]
