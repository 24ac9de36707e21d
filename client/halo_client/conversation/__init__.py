"""The core: the conversation state, the brightness tracker, the pruner, sessions and the chat."""

from halo_client.conversation.chat import (
    BudgetStatus,
    Chat,
    ContextBudgetExceeded,
    MessageTooLong,
    Reply,
    ReplyStep,
)
from halo_client.conversation.pruner import PruneEvent, Pruner, PruneResult, PrunerSettings
from halo_client.conversation.session import Session, SessionError, load, save
from halo_client.conversation.state import ConversationError, ConversationState, FrameColumns, TokenRow
from halo_client.conversation.template import ChatTemplate, TemplateError
from halo_client.conversation.tracker import AttentionTracker, TrackerSettings, distance_weights

__all__ = [
    "AttentionTracker", "BudgetStatus", "Chat", "ChatTemplate", "ContextBudgetExceeded", "ConversationError",
    "ConversationState", "FrameColumns", "MessageTooLong", "PruneEvent", "PruneResult", "Pruner", "PrunerSettings",
    "Reply", "ReplyStep", "Session", "SessionError", "TemplateError", "TokenRow", "TrackerSettings",
    "distance_weights", "load", "save",
]
