from qemuprov.cli import main

raise SystemExit(main())
