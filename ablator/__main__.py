from ablator.cli import main

raise SystemExit(main())
