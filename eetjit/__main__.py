from eetjit.cli import main

raise SystemExit(main())
