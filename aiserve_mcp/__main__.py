from aiserve_mcp.cli import main

main()
