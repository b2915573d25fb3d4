"""Parcel: consent-gated attachments for Matrix support chats."""
