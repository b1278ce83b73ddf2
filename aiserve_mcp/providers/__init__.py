"""GPU marketplaces behind one interface: vast.ai, io.net and this host."""
