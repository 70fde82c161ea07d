"""Agents: propose one experiment at a time through the engine's file tools."""
