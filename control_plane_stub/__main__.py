from control_plane_stub.cli import main

raise SystemExit(main())
