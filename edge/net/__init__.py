"""Socket shells shared by the SC, the SPU and the client."""
