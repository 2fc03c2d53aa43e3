"""Running long work: stamped, resumable stages (``pipeline``), sharding over processes (``sharding``) and the
executors that run shards locally or on Ray (``executors``)."""
