from tlite_edge.cli import main

raise SystemExit(main())
