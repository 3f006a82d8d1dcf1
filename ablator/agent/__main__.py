from ablator.agent import main

raise SystemExit(main())
