"""Stages that turn user inputs into what the workflows read: csv_to_folders, patch_dataset."""
