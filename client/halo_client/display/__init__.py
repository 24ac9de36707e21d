"""How brightness is shown, the same way by every display (the terminal and the web workbench)."""

from halo_client.display.scale import SCALE_MODES, HeatScale, ScaleMode, conversation_levels, heat_scale, scaling_tokens

__all__ = ["SCALE_MODES", "HeatScale", "ScaleMode", "conversation_levels", "heat_scale", "scaling_tokens"]
