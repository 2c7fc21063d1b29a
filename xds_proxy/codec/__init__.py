"""HTTP wire pieces that the downstream side (`http/`) and the upstream side (`upstream/`)
both use: pre-rendered local responses and the date header (`responses`), and h2's connection
with a bounded record of closed streams (`h2_connection`). Imports nothing of ours."""
