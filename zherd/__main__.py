from zherd.cli import main

raise SystemExit(main())
