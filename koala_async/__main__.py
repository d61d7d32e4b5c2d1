from koala_async.tools.cli import main

raise SystemExit(main())
