from bcct.cli import main

raise SystemExit(main())
