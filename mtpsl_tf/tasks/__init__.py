"""Task modules; importing `mtpsl_tf.tasks.all` fills the TASKS registry."""
