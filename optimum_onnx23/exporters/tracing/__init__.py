"""The torch side of an export: the export signature (`signature.py`: I/O names, dynamic dims,
sample inputs, built once per export), the one flat-tensor wrapper (`wrapper.py`) and the cache it
rebuilds (`export_cache.py`), the exportable forms of recurrent scans (`recurrences.py`) and of MoE
experts (`experts.py`), checkpoint loading (`checkpoint.py`) and torch.export itself (`trace.py`)."""
