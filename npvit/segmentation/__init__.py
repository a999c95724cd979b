"""Running the segmentation releases on images and datasets (the models themselves are in
npvit/models/segmentation.py):

    preprocess.segmentation_input(image, release)   a photo -> the network input of its release
    inference.segment(model, image)                 -> (H, W) class indices at the photo's size
    metrics.ConfusionMatrix                         mIoU, pixel accuracy, per-class IoU
    datasets.labelled_pairs(folder)                 PASCAL VOC or ADE20k folder -> (image, mask)
    overlay.save_overlay / save_label_png           what `npvit segment` writes
    evaluate.run                                    `npvit eval` on a segmentation dataset
"""
