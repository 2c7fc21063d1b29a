from xds_proxy.cli import main

raise SystemExit(main())
